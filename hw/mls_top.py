"""Building blocks of the per-layer MLS top (docs/mls.md, "Integer semantics"): the integer
MLS encoder that turns a buffered frame's fixed-point integers into MLS codes, after Zhong et
al., "Exploring the Potential of Low-bit Training of Convolutional Neural Networks" (2020).

The semantics are ``compiler/mls.py``'s :func:`~accumulus.compiler.mls.quantize_int`; both
units are combinational and compare shifted integers against the frame maximum ``S`` only
(no divider wider than the ``M`` mantissa bits, done as ``M`` restoring steps):

* :class:`MLSGroupExponent`: a group's maximum magnitude ``gmax`` and ``S`` -> the group
  exponent ``g`` the elements are coded with, and the code ``g_code`` stored (0 when the
  whole group rounds to zero);
* :class:`MLSElementEncoder`: an element's magnitude, its sign, the group's ``g`` and ``S``
  -> ``sign, exp, man, zero``.

:class:`MLSLayerSpec` / :class:`MLSLayer` put them into one layer's stream stage: frame
buffer with the running frame and group maxima, the encoder, hw/mls_mac.py's dot engine over
the weight codes in a ROM, the integer requantization and an output FIFO with back-pressure.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.mls import MLSFormat

__all__ = ["MLSGroupExponent", "MLSElementEncoder", "MLSLayerSpec", "MLSLayer", "MLSMaxPoolSpec", "MLSMaxPool",
           "MLSTopSpec", "MLSTop"]


def _check(fmt, width):
    if not isinstance(fmt, MLSFormat):
        raise TypeError(f"fmt must be an accumulus.compiler.mls.MLSFormat, got {fmt!r}")
    if fmt.mantissa_bits < 1 or fmt.group_bits < 1:
        raise ValueError(f"the MLS hardware needs mantissa_bits >= 1 and group_bits >= 1, got {fmt.name}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (bits of a magnitude), got {width!r}")


class MLSGroupExponent(wiring.Component):
    """``g`` = the smallest ``k`` in ``[0, 2^Eg-1]`` with ``gmax * 2^k >= S`` (else ``2^Eg-1``),
    minus one when ``gmax`` then rounds up to 2; ``g_code`` = 0 when ``gmax`` is 0 or rounds
    to zero at ``g`` (then every element of the group does), else ``g``."""

    def __init__(self, fmt: MLSFormat, width: int):
        _check(fmt, width)
        self.fmt, self.width = fmt, width
        super().__init__({"gmax": In(unsigned(width)), "s": In(unsigned(width)),
                          "g": Out(range(fmt.max_group_exponent + 1)),
                          "g_code": Out(range(fmt.max_group_exponent + 1))})

    def elaborate(self, platform):
        m = Module()
        f = self.fmt
        M, gmx, emax = f.mantissa_bits, f.max_group_exponent, f.max_exponent
        k = Signal(range(gmx + 1))
        m.d.comb += k.eq(gmx)
        for kk in range(gmx, -1, -1):                 # the last (smallest) match wins
            with m.If((self.gmax << kk) >= self.s):
                m.d.comb += k.eq(kk)
        over = Signal()
        m.d.comb += over.eq((k > 0) & ((self.gmax << (k + M + 1)) >= self.s * ((1 << (M + 2)) - 1)))
        m.d.comb += self.g.eq(Mux(self.gmax == 0, 0, Mux(over, k - 1, k)))
        rounds_to_zero = (self.gmax << (self.g + emax + 1)) <= self.s
        m.d.comb += self.g_code.eq(Mux((self.gmax == 0) | rounds_to_zero, 0, self.g))
        return m


class MLSElementEncoder(wiring.Component):
    """One element: magnitude ``a``, ``neg``, the group's ``g`` and the frame maximum ``s``
    -> MLS codes ``sign, exp, man, zero`` (nearest rounding, ties to even mantissa)."""

    def __init__(self, fmt: MLSFormat, width: int):
        _check(fmt, width)
        self.fmt, self.width = fmt, width
        super().__init__({"a": In(unsigned(width)), "neg": In(1), "g": In(range(fmt.max_group_exponent + 1)),
                          "s": In(unsigned(width)),
                          "sign": Out(1), "exp": Out(range(fmt.max_exponent + 1)),
                          "man": Out(unsigned(fmt.mantissa_bits)), "zero": Out(1)})

    def elaborate(self, platform):
        m = Module()
        f = self.fmt
        M, emax = f.mantissa_bits, f.max_exponent
        ag = Signal(unsigned(self.width + f.max_group_exponent))
        m.d.comb += ag.eq(self.a << self.g)
        e = Signal(range(emax + 1))
        normal = Signal()
        for kk in range(emax, -1, -1):                # smallest kk with ag * 2^kk >= S
            with m.If((ag << kk) >= self.s):
                m.d.comb += [e.eq(kk), normal.eq(self.a != 0)]
        under = Signal()
        m.d.comb += under.eq((self.a != 0) & ~normal & ((ag << (emax + 1)) > self.s))
        # N = ag * 2^(e+M) - S * 2^M, 0 <= N < S * 2^M: M quotient bits by restoring division
        nbits = self.width + f.max_group_exponent + emax + M + 1
        rem = Signal(unsigned(nbits), name="rem0")
        m.d.comb += rem.eq(Mux(normal, (ag << (e + M)) - (self.s << M), 0))
        q_bits = []
        for i in range(M - 1, -1, -1):
            nxt = Signal(unsigned(nbits), name=f"rem_{i}")
            bit = Signal(name=f"q_{i}")
            m.d.comb += bit.eq(rem >= (self.s << i))
            m.d.comb += nxt.eq(Mux(bit, rem - (self.s << i), rem))
            q_bits.append(bit)
            rem = nxt
        q = Signal(unsigned(M))
        for i, bit in zip(range(M - 1, -1, -1), q_bits):
            m.d.comb += q[i].eq(bit)
        up = Signal()
        m.d.comb += up.eq(((rem << 1) > self.s) | (((rem << 1) == self.s) & q[0]))
        mq = Signal(unsigned(M + 1))
        m.d.comb += mq.eq(q + up)
        carry = mq[M]
        zero = ~(normal | under)
        m.d.comb += [
            self.zero.eq(zero),
            self.sign.eq(~zero & self.neg),
            self.exp.eq(Mux(normal, Mux(carry, e - 1, e), Mux(under, emax, 0))),
            self.man.eq(Mux(normal & ~carry, mq[:M], 0)),
        ]
        return m


# -- the per-layer stage ------------------------------------------------------------------------
def _pack_lane_codes(codes: dict, lanes: int, fmt: MLSFormat) -> int:
    """One ROM word: lane ``l``'s ``sign, exp, man, zero`` in consecutive fields of
    ``2 + E + M`` bits (sign lowest), lanes from the low bits, then nothing else."""
    E, M = fmt.exponent_bits, fmt.mantissa_bits
    lw = 2 + E + M
    word = 0
    for l in range(lanes):
        v = (int(codes["sign"][l]) | int(codes["exp"][l]) << 1 | int(codes["man"][l]) << (1 + E)
             | int(codes["zero"][l]) << (1 + E + M))
        word |= v << (l * lw)
    return word


class MLSLayerSpec:
    """One MLS layer of an MLS plan (``mls_matvec`` or ``mls_conv``) as a stream stage.

    The stage reads a frame of integer activations (``in_bits`` signed, one element per beat,
    the frame in the plan's ONNX order ``(C, H, W)``), keeps it in a frame buffer while it
    tracks the frame maximum ``S = max|X|`` and every group's maximum, then, per output
    (``n`` major, then output pixels in row order), encodes the window's elements with
    :class:`MLSGroupExponent` / :class:`MLSElementEncoder`, runs the hw/mls_mac.py dot engine
    against the weight codes (a ROM), requantizes ``Y = relu(rne(T * S * A_n, r) + B_n)``
    (docs/mls.md, "Integer semantics"; ``compiler.golden.mls_requant``) and emits ``Y``
    (``out_bits`` signed, one per beat).

    A fully connected layer is the special case of a convolution whose kernel covers the
    whole input (a 2-D weight: a 1x1 input).

    Parameters
    ----------
    plan : MLSPlan
    layer : dict
        One of ``plan.layers`` of kind ``mls_matvec`` or ``mls_conv``.
    lanes : int, optional
        Element pairs per cycle, a divisor of ``G`` (default ``G``).
    out_depth : int
        Entries of the output FIFO (dot products may be in flight up to it).
    """

    def __init__(self, plan, layer: dict, lanes: int | None = None, out_depth: int = 4):
        from .mls_mac import MLSDotSpec

        kind = layer.get("kind")
        if kind not in ("mls_matvec", "mls_conv"):
            raise ValueError(f"MLS layer '{layer.get('name')}': kind {kind!r} is not mls_matvec or mls_conv")
        self.plan, self.layer, self.name = plan, layer, layer["name"]
        self.fmt = fmt = plan.format(layer)
        wc = plan.weight_codes(layer)
        ws = tuple(layer["weight_shape"])
        in_shape = tuple(layer["in_shape"])
        if kind == "mls_matvec" and len(ws) == 2:
            if in_shape != (ws[1],):
                raise ValueError(f"MLS layer '{self.name}': weight {ws} over an input of shape {in_shape}")
            c, h, w, kh, kw = ws[1], 1, 1, 1, 1
            stride, pad = 1, 0
        elif kind == "mls_matvec":
            c, kh, kw = ws[1], ws[2], ws[3]
            if in_shape != (c, kh, kw):
                raise ValueError(f"MLS layer '{self.name}': weight {ws} needs an unflattened input (C, H, W) = "
                                 f"{(c, kh, kw)}, got {in_shape}")
            h, w, stride, pad = kh, kw, 1, 0
        else:
            c, kh, kw = ws[1], ws[2], ws[3]
            if len(in_shape) != 3 or in_shape[0] != c:
                raise ValueError(f"MLS layer '{self.name}': weight {ws} over an input of shape {in_shape}")
            h, w = in_shape[1], in_shape[2]
            stride, pad = int(layer["stride"]), int(layer["padding"])
        self.n, self.c, self.h, self.w, self.kh, self.kw = int(ws[0]), int(c), int(h), int(w), int(kh), int(kw)
        self.stride, self.pad = stride, pad
        self.oh = (h + 2 * pad - kh) // stride + 1
        self.ow = (w + 2 * pad - kw) // stride + 1
        G = fmt.group_size
        self.groups = -(-self.c // G)
        self.dot = MLSDotSpec(fmt, self.kh * self.kw, self.groups, lanes)
        self.lanes = L = self.dot.lanes
        self.chunks = G // L                                   # lane chunks per group
        self.frame_elems = self.c * self.h * self.w
        self.out_elems = self.n * self.oh * self.ow
        self.bank_depth = self.groups * self.chunks * self.h * self.w
        rq = layer["requant"]
        self.in_bits, self.out_bits = int(rq["in_bits"]), int(rq["out_bits"])
        self.A = [int(v) for v in rq["A"]]
        self.B = [int(v) for v in rq["B"]]
        self.shift = int(rq["shift"])
        self.relu = bool(rq["relu"])
        self.a_bits = max(int(v).bit_length() for v in self.A + [1]) + 1
        self.b_bits = max(int(v).bit_length() for v in self.B + [1]) + 1
        self.out_depth = int(out_depth)
        if self.out_depth < 1:
            raise ValueError(f"out_depth must be >= 1, got {out_depth}")
        # weight ROM: one word per dot step (n, group, tap, chunk): L lanes of codes + w_group
        spd = self.dot.steps_per_dot
        self.lane_bits = 2 + fmt.exponent_bits + fmt.mantissa_bits
        words = []
        W4 = {k: getattr(wc, a).reshape(self.n, self.c, self.kh * self.kw)
              for k, a in (("sign", "sign"), ("exp", "exponent"), ("man", "mantissa"), ("zero", "zero"))}
        for n in range(self.n):
            wn = {k: v[n] for k, v in W4.items()}
            st = self.dot.arrange(wn, wn, wc.group_exponent[n], wc.group_exponent[n])
            for k in range(spd):
                lane = {f: st[f"w_{f}"][k] for f in ("sign", "exp", "man", "zero")}
                words.append(_pack_lane_codes(lane, L, fmt) | int(st["w_group"][k]) << (L * self.lane_bits))
        self.rom_words = words
        self.rom_bits = L * self.lane_bits + fmt.group_bits

    pipeline = 8
    """Cycles from a frame's last dot step until its buffer is free again."""

    @property
    def cycles_per_frame(self) -> int:
        """Steady state, no stalls: the frame buffers are double, so a frame takes the longer of
        its fill (one element per cycle) and its dot steps (one per cycle) plus the drain."""
        return max(self.frame_elems, self.out_elems * self.dot.steps_per_dot + self.pipeline)

    def info(self) -> dict:
        return {"layer": self.name, "kind": self.layer["kind"], "format": self.fmt.name, "lanes": self.lanes,
                "in_shape": [self.c, self.h, self.w], "kernel": [self.kh, self.kw], "stride": self.stride,
                "padding": self.pad, "outputs": self.out_elems, "in_bits": self.in_bits, "out_bits": self.out_bits,
                "group_acc_bits": self.dot.group_acc_bits, "dot_acc_bits": self.dot.acc_bits,
                "requant_product_bits": self.dot.acc_bits + self.in_bits + 1 + self.a_bits,
                "frame_buffer_bits": 2 * self.frame_elems * self.in_bits, "weight_rom_bits": len(self.rom_words) * self.rom_bits,
                "cycles_per_frame": self.cycles_per_frame}

    def create(self) -> "MLSLayer":
        return MLSLayer(self)


class MLSLayer(wiring.Component):
    """The stage of :class:`MLSLayerSpec`.

    Members
    -------
    i : In(stream.Signature(signed(in_bits)))
        The frame's elements in ``(C, H, W)`` order; ready while the frame buffer fills.
    o : Out(stream.Signature(signed(out_bits)))
        ``Y`` in ``(N, OH, OW)`` order.

    Two frame buffers (ping-pong) decouple the two sides. The writer takes ``C*H*W``
    elements into the free buffer (bank ``ch % lanes``, running ``max|x|`` and group maxima)
    while ``i.ready`` is high. The compute side takes a full buffer: COMPUTE (one dot step per
    cycle; a dot product starts only while the output FIFO has room for it, so a stalled
    output never loses a result), WAIT (until every started dot product is in the FIFO),
    then frees the buffer. Pipeline of a step:
    buffer and ROM read (1 cycle), encode (1 cycle, registered), the dot engine
    (``MLSDotSpec.latency``), then ``T * S`` (1), ``* A_n`` (1), rounding shift, ``+ B_n``
    and ReLU into the FIFO (1).
    """

    def __init__(self, spec: MLSLayerSpec):
        from amaranth.lib import stream
        from amaranth.hdl import signed

        if not isinstance(spec, MLSLayerSpec):
            raise TypeError(f"spec must be an MLSLayerSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(stream.Signature(signed(spec.in_bits))),
                          "o": Out(stream.Signature(signed(spec.out_bits)))})

    def elaborate(self, platform):
        from amaranth.hdl import Array, Cat, Mux, signed
        from amaranth.lib import fifo
        from amaranth.lib.memory import Memory

        from .mls_mac import MLSDot

        m = Module()
        s = self.spec
        f = s.fmt
        G, L, E, M = f.group_size, s.lanes, f.exponent_bits, f.mantissa_bits
        HW = s.h * s.w
        mag_bits = s.in_bits                      # |x| of a signed in_bits value fits unsigned in_bits

        # ---- frame buffer: bank l holds channels ch % L == l at ((ch // L) * H + y) * W + x
        banks = []
        for l in range(L):
            mem = Memory(shape=signed(s.in_bits), depth=2 * s.bank_depth, init=[])   # two frames
            m.submodules[f"bank{l}"] = mem
            banks.append((mem.write_port(), mem.read_port(transparent_for=())))
        rom = Memory(shape=unsigned(s.rom_bits), depth=len(s.rom_words), init=s.rom_words)
        m.submodules.wrom = rom
        rom_rd = rom.read_port(transparent_for=())
        ab_words = [(a & ((1 << s.a_bits) - 1)) | (b & ((1 << s.b_bits) - 1)) << s.a_bits for a, b in zip(s.A, s.B)]
        abrom = Memory(shape=unsigned(s.a_bits + s.b_bits), depth=s.n, init=ab_words)
        m.submodules.abrom = abrom
        ab_rd = abrom.read_port(transparent_for=())

        # two frame buffers (ping-pong): the writer fills buffer ``wsel`` while the dot
        # products read buffer ``rsel``; each has its group maxima and its S, held until every
        # dot product of its frame has been requantized (WAIT), then the buffer is free again
        smax = Signal(unsigned(mag_bits))                      # running max|x| of the frame
        gmax = Array(Signal(unsigned(mag_bits), name=f"gmax{b}_{j}") for b in range(2) for j in range(s.groups))
        s_buf = Array(Signal(unsigned(mag_bits), name=f"s_buf{b}") for b in range(2))
        full = Array(Signal(name=f"full{b}") for b in range(2))
        wsel, rsel = Signal(), Signal()
        s_frame = Signal(unsigned(mag_bits))
        m.d.comb += s_frame.eq(s_buf[rsel])

        # ---- writer counters over (chunk, lane, pixel) and the group of the element
        w_lane = Signal(range(L))
        w_chunk = Signal(range(max(s.groups * s.chunks, 1)))
        w_pix = Signal(range(max(HW, 1)))
        w_grp = Signal(range(s.groups))
        w_gfirst = Signal(init=1)                              # next element starts a group
        w_count = Signal(range(s.frame_elems + 1))
        x_in = self.i.payload
        mag_in = Signal(unsigned(mag_bits))
        m.d.comb += mag_in.eq(Mux(x_in < 0, -x_in, x_in))

        phase = Signal(2)                                      # compute side: 0 IDLE, 1 COMPUTE, 2 WAIT
        IDLE, COMPUTE, WAIT = 0, 1, 2
        m.d.comb += self.i.ready.eq(~full[wsel])
        wr_addr = Signal(range(2 * s.bank_depth))
        m.d.comb += wr_addr.eq(wsel * s.bank_depth + w_chunk * HW + w_pix)
        for l, (wp, _) in enumerate(banks):
            m.d.comb += [wp.addr.eq(wr_addr), wp.data.eq(x_in),
                         wp.en.eq(self.i.valid & self.i.ready & (w_lane == l))]

        # ---- COMPUTE counters: n, oy, ox, group, ky, kx, chunk
        cn = Signal(range(s.n))
        coy = Signal(range(s.oh))
        cox = Signal(range(s.ow))
        cj = Signal(range(s.groups))
        cky = Signal(range(s.kh))
        ckx = Signal(range(s.kw))
        cc = Signal(range(s.chunks))
        wstep = Signal(range(len(s.rom_words)))                # n * steps_per_dot + step
        wbase = Signal(range(len(s.rom_words)))                # n * steps_per_dot
        at_dot_start = Signal()
        m.d.comb += at_dot_start.eq((cj == 0) & (cky == 0) & (ckx == 0) & (cc == 0))
        last_step = Signal()
        m.d.comb += last_step.eq((cj == s.groups - 1) & (cky == s.kh - 1) & (ckx == s.kw - 1) & (cc == s.chunks - 1))
        last_dot = Signal()
        m.d.comb += last_dot.eq((cn == s.n - 1) & (coy == s.oh - 1) & (cox == s.ow - 1))

        m.submodules.ofifo = ofifo = fifo.SyncFIFOBuffered(width=s.out_bits, depth=s.out_depth)
        inflight = Signal(range(s.out_depth + 2))
        room = Signal()
        m.d.comb += room.eq(ofifo.level + inflight < s.out_depth)
        issue = Signal()
        m.d.comb += issue.eq((phase == COMPUTE) & (~at_dot_start | room))
        started = Signal()
        m.d.comb += started.eq(issue & at_dot_start)
        pushed = Signal()

        # element coordinates of every lane
        iy = Signal(signed(max(s.h, s.oh * s.stride + s.kh).bit_length() + 2))
        ix = Signal(signed(max(s.w, s.ow * s.stride + s.kw).bit_length() + 2))
        m.d.comb += [iy.eq(coy * s.stride + cky - s.pad), ix.eq(cox * s.stride + ckx - s.pad)]
        inside = Signal()
        m.d.comb += inside.eq((iy >= 0) & (iy < s.h) & (ix >= 0) & (ix < s.w))
        rd_addr = Signal(range(2 * s.bank_depth))
        m.d.comb += rd_addr.eq(rsel * s.bank_depth + (cj * s.chunks + cc) * HW + Mux(inside, iy * s.w + ix, 0))
        lane_ok = []
        for l, (_, rp) in enumerate(banks):
            ok = Signal(name=f"lane_ok{l}")
            m.d.comb += ok.eq(inside & (cj * G + cc * L + l < s.c))
            lane_ok.append(ok)
            m.d.comb += [rp.addr.eq(rd_addr), rp.en.eq(1)]
        m.d.comb += [rom_rd.addr.eq(wstep), rom_rd.en.eq(1)]

        # stage 1 (buffer data valid): control delayed by one cycle
        v1 = Signal()
        ok1 = Signal(L)
        j1 = Signal(range(s.groups))
        m.d.sync += [v1.eq(issue), ok1.eq(Cat(*lane_ok)), j1.eq(cj)]

        m.submodules.gexp = gexp = MLSGroupExponent(f, mag_bits)
        m.d.comb += [gexp.gmax.eq(gmax[rsel * s.groups + j1]), gexp.s.eq(s_frame)]
        enc_out = {k: [] for k in ("sign", "exp", "man", "zero")}
        for l, (_, rp) in enumerate(banks):
            enc = MLSElementEncoder(f, mag_bits)
            m.submodules[f"enc{l}"] = enc
            xv = rp.data
            m.d.comb += [enc.a.eq(Mux(xv < 0, -xv, xv)), enc.neg.eq(xv < 0), enc.g.eq(gexp.g), enc.s.eq(s_frame)]
            z = Signal(name=f"z{l}")
            m.d.comb += z.eq(enc.zero | ~ok1[l])
            enc_out["sign"].append(enc.sign & ~z)
            enc_out["exp"].append(Mux(z, 0, enc.exp))
            enc_out["man"].append(Mux(z, 0, enc.man))
            enc_out["zero"].append(z)

        # stage 2 (registered codes) -> the dot engine
        m.submodules.dot = dot = MLSDot(s.dot)
        v2 = Signal()
        m.d.sync += v2.eq(v1)
        lb = s.lane_bits
        wword = rom_rd.data
        regs = {}
        for k, parts in enc_out.items():
            r = Signal(len(Cat(*parts)), name=f"x_{k}_r")
            m.d.sync += r.eq(Cat(*parts))
            regs[k] = r
        xg = Signal(f.group_bits)
        m.d.sync += xg.eq(gexp.g_code)
        wreg = Signal(s.rom_bits)
        m.d.sync += wreg.eq(wword)
        wf = {"sign": [], "exp": [], "man": [], "zero": []}
        for l in range(L):
            base = l * lb
            wf["sign"].append(wreg[base])
            wf["exp"].append(wreg[base + 1:base + 1 + E])
            wf["man"].append(wreg[base + 1 + E:base + 1 + E + M])
            wf["zero"].append(wreg[base + 1 + E + M])
        m.d.comb += [dot.w_sign.eq(Cat(*wf["sign"])), dot.w_exp.eq(Cat(*wf["exp"])),
                     dot.w_man.eq(Cat(*wf["man"])), dot.w_zero.eq(Cat(*wf["zero"])),
                     dot.w_group.eq(wreg[L * lb:]),
                     dot.x_sign.eq(regs["sign"]), dot.x_exp.eq(regs["exp"]), dot.x_man.eq(regs["man"]),
                     dot.x_zero.eq(regs["zero"]), dot.x_group.eq(xg), dot.valid.eq(v2)]

        # ---- requantization: T * S, * A_n, rne >> r, + B_n, ReLU
        rn = Signal(range(s.n))                                # channel of the next finished dot
        rpix = Signal(range(s.oh * s.ow))
        m.d.comb += [ab_rd.addr.eq(rn), ab_rd.en.eq(dot.acc_valid)]
        p1 = Signal(signed(s.dot.acc_bits + mag_bits + 1))
        r1 = Signal()
        m.d.sync += r1.eq(dot.acc_valid)
        with m.If(dot.acc_valid):
            m.d.sync += p1.eq(dot.acc * s_frame)
            with m.If(rpix == s.oh * s.ow - 1):
                m.d.sync += [rpix.eq(0), rn.eq(Mux(rn == s.n - 1, 0, rn + 1))]
            with m.Else():
                m.d.sync += rpix.eq(rpix + 1)
        a_val = Signal(signed(s.a_bits))
        b_val = Signal(signed(s.b_bits))
        m.d.comb += [a_val.eq(ab_rd.data[:s.a_bits]), b_val.eq(ab_rd.data[s.a_bits:])]
        p2 = Signal(signed(len(p1) + s.a_bits))
        b2 = Signal(signed(s.b_bits))
        r2 = Signal()
        m.d.sync += [r2.eq(r1), p2.eq(p1 * a_val), b2.eq(b_val)]
        r = s.shift
        if r > 0:
            q = Signal(signed(len(p2) - r + 1))
            m.d.comb += q.eq(p2 >> r)
            rem = p2[:r]
            half = 1 << (r - 1)
            up = (rem > half) | ((rem == half) & q[0])
            rounded = q + up
        else:
            rounded = p2
        ysum = Signal(signed(len(p2) + 2))
        m.d.comb += ysum.eq(rounded + b2)
        y = Signal(signed(len(ysum)))
        m.d.comb += y.eq(Mux(ysum < 0, 0, ysum) if s.relu else ysum)
        m.d.comb += [ofifo.w_data.eq(y[:s.out_bits]), ofifo.w_en.eq(r2)]
        m.d.comb += pushed.eq(r2)
        m.d.comb += [self.o.payload.eq(ofifo.r_data), self.o.valid.eq(ofifo.r_rdy), ofifo.r_en.eq(self.o.ready)]
        m.d.sync += inflight.eq(inflight + started - pushed)

        # ---- writer: fill buffer wsel
        with m.If(self.i.valid & self.i.ready):
            first = w_count == 0
            gcur = gmax[wsel * s.groups + w_grp]
            m.d.sync += smax.eq(Mux(first | (mag_in > smax), mag_in, smax))
            m.d.sync += gcur.eq(Mux(w_gfirst | (mag_in > gcur), mag_in, gcur))
            # advance (ch, pixel): pixel fastest, then the lane, then the chunk
            ch_done = w_pix == HW - 1
            with m.If(ch_done):
                m.d.sync += w_pix.eq(0)
                with m.If(w_lane == L - 1):
                    m.d.sync += [w_lane.eq(0), w_chunk.eq(w_chunk + 1)]
                with m.Else():
                    m.d.sync += w_lane.eq(w_lane + 1)
            with m.Else():
                m.d.sync += w_pix.eq(w_pix + 1)
            # the group of the next element (G channels of HW pixels)
            gcount = Signal(range(G * HW), name="w_gcount")
            with m.If(gcount == G * HW - 1):
                m.d.sync += [gcount.eq(0), w_grp.eq(w_grp + 1), w_gfirst.eq(1)]
            with m.Else():
                m.d.sync += [gcount.eq(gcount + 1), w_gfirst.eq(0)]
            with m.If(w_count == s.frame_elems - 1):
                newmax = Mux(first | (mag_in > smax), mag_in, smax)
                m.d.sync += [full[wsel].eq(1), wsel.eq(~wsel), w_count.eq(0), w_pix.eq(0), w_lane.eq(0),
                             w_chunk.eq(0), w_grp.eq(0), w_gfirst.eq(1), gcount.eq(0),
                             s_buf[wsel].eq(Mux(newmax == 0, 1, newmax))]
            with m.Else():
                m.d.sync += w_count.eq(w_count + 1)
        # ---- compute side: read buffer rsel
        with m.If(phase == IDLE):
            with m.If(full[rsel]):
                m.d.sync += phase.eq(COMPUTE)
        with m.Elif(phase == COMPUTE):
            with m.If(issue):
                # innermost chunk, then kx, ky, group; then ox, oy, n
                def nest(levels, on_wrap):
                    sig, top = levels[0]
                    with m.If(sig == top - 1):
                        m.d.sync += sig.eq(0)
                        if len(levels) > 1:
                            nest(levels[1:], on_wrap)
                        else:
                            on_wrap()
                    with m.Else():
                        m.d.sync += sig.eq(sig + 1)

                def dot_done():
                    def all_done():
                        m.d.sync += [phase.eq(WAIT), wstep.eq(0), wbase.eq(0)]
                    nest([(cox, s.ow), (coy, s.oh), (cn, s.n)], all_done)

                nest([(cc, s.chunks), (ckx, s.kw), (cky, s.kh), (cj, s.groups)], dot_done)
                with m.If(~last_step):
                    m.d.sync += wstep.eq(wstep + 1)
                with m.Elif(last_dot):
                    pass
                with m.Elif((cox == s.ow - 1) & (coy == s.oh - 1)):
                    m.d.sync += [wstep.eq(wstep + 1), wbase.eq(wstep + 1)]   # next channel's weights
                with m.Else():
                    m.d.sync += wstep.eq(wbase)                              # same weights, next pixel
        with m.Else():
            with m.If((inflight == 0) & ~v1 & ~v2):
                m.d.sync += [phase.eq(IDLE), full[rsel].eq(0), rsel.eq(~rsel)]
        return m


# -- max-pooling between MLS layers ---------------------------------------------------------
class MLSMaxPoolSpec:
    """A plan ``maxpool`` layer of an MLS plan on a ``(C, H, W)``-ordered stream, one element
    per beat, window = stride (non-overlapping windows; rows and columns past the last
    whole window are dropped, as ONNX MaxPool without padding does)."""

    def __init__(self, plan, layer: dict):
        (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
        if not (kh == kw == sh == sw):
            raise ValueError(f"MLS max-pool '{layer['name']}': the hardware takes square windows equal to the "
                             f"stride, got kernel {layer['kernel']} stride {layer['stride']}")
        self.name, self.layer = layer["name"], layer
        self.k = int(kh)
        self.c, self.h, self.w = (int(v) for v in layer["in_shape"])
        self.oh, self.ow = (self.h - self.k) // self.k + 1, (self.w - self.k) // self.k + 1
        self.bits = int(plan.doc["tensors"][layer["input"]]["bits"])
        self.in_bits = self.out_bits = self.bits
        self.frame_elems = self.c * self.h * self.w
        self.out_elems = self.c * self.oh * self.ow

    @property
    def cycles_per_frame(self) -> int:
        return self.frame_elems

    def info(self) -> dict:
        return {"layer": self.name, "kind": "maxpool", "in_shape": [self.c, self.h, self.w], "kernel": self.k,
                "outputs": self.out_elems, "in_bits": self.bits, "out_bits": self.bits,
                "cycles_per_frame": self.cycles_per_frame}

    def create(self) -> "MLSMaxPool":
        return MLSMaxPool(self)


class MLSMaxPool(wiring.Component):
    """See :class:`MLSMaxPoolSpec`. One row of window maxima (``OW`` registers); a beat that
    completes a window passes straight through to ``o`` (``i.ready`` follows ``o.ready``)."""

    def __init__(self, spec: MLSMaxPoolSpec):
        from amaranth.hdl import signed
        from amaranth.lib import stream

        self.spec = spec
        super().__init__({"i": In(stream.Signature(signed(spec.bits))), "o": Out(stream.Signature(signed(spec.bits)))})

    def elaborate(self, platform):
        from amaranth.hdl import Array, Mux, signed

        m = Module()
        s = self.spec
        k = s.k
        acc = Array(Signal(signed(s.bits), name=f"row_max{j}") for j in range(s.ow))
        x, y = Signal(range(s.w)), Signal(range(s.h))
        kx, ky = Signal(range(k)), Signal(range(k))
        ox = Signal(range(s.ow + 1))
        oy = Signal(range(s.oh + 1))
        inside = Signal()
        m.d.comb += inside.eq((ox < s.ow) & (oy < s.oh))
        v = self.i.payload
        first = (kx == 0) & (ky == 0)
        cur = Signal(signed(s.bits))
        m.d.comb += cur.eq(Mux(first | (v > acc[ox]), v, acc[ox]))
        completes = Signal()
        m.d.comb += completes.eq(inside & (kx == k - 1) & (ky == k - 1))
        m.d.comb += [self.o.payload.eq(cur), self.o.valid.eq(self.i.valid & completes),
                     self.i.ready.eq(~completes | self.o.ready)]
        with m.If(self.i.valid & self.i.ready):
            with m.If(inside & ~completes):
                m.d.sync += acc[ox].eq(cur)
            with m.If(x == s.w - 1):
                m.d.sync += [x.eq(0), kx.eq(0), ox.eq(0)]
                with m.If(y == s.h - 1):
                    m.d.sync += [y.eq(0), ky.eq(0), oy.eq(0)]
                with m.Else():
                    m.d.sync += y.eq(y + 1)
                    with m.If(ky == k - 1):
                        m.d.sync += [ky.eq(0), oy.eq(oy + 1)]
                    with m.Else():
                        m.d.sync += ky.eq(ky + 1)
            with m.Else():
                m.d.sync += x.eq(x + 1)
                with m.If(kx == k - 1):
                    m.d.sync += [kx.eq(0), ox.eq(ox + 1)]
                with m.Else():
                    m.d.sync += kx.eq(kx + 1)
        return m


# -- the whole MLS plan -----------------------------------------------------------------------
def _beat_bytes(bits: int) -> int:
    return -(-bits // 8)


class MLSTopSpec:
    """The stages of an MLS plan, in order, behind AXI-Stream ports (one element per beat).

    ``flatten`` layers are free (every stream is in the ONNX ``(C, H, W)`` order already);
    ``maxpool`` layers are :class:`MLSMaxPool`; ``mls_matvec`` / ``mls_conv`` layers are
    :class:`MLSLayer`. The plan must be a chain (each layer reads the previous one's output).

    Ports of :class:`MLSTop`: ``s_axis_tdata`` (the graph input codes, ``in_bits`` wide,
    zero- or sign-extended into the first stage, the beat padded to whole bytes),
    ``s_axis_tvalid/tready/tlast`` (tlast ignored), ``m_axis_tdata`` (the final layer's
    ``out_bits`` signed integers ``Y``; logits ``= Y * scale``), ``m_axis_tvalid/tready/tlast``
    (tlast on a frame's last element).
    """

    def __init__(self, plan, lanes: int | None = None):
        doc = plan.doc
        self.plan = plan
        spec = doc["input"]
        self.in_bits = int(spec["bits"])
        self.in_signed = bool(spec["signed"])
        self.in_elems = int(np.prod(spec["shape"]))
        self.stages = []
        cur = spec["name"]
        for layer in plan.layers:
            if layer["input"] != cur:
                raise ValueError(f"MLS layer '{layer['name']}' reads '{layer['input']}', not the previous layer's "
                                 f"output '{cur}': the MLS hardware takes a chain of layers")
            cur = layer["output"]
            if layer["kind"] == "flatten":
                continue
            if layer["kind"] == "maxpool":
                self.stages.append(MLSMaxPoolSpec(plan, layer))
            else:
                self.stages.append(MLSLayerSpec(plan, layer, lanes=lanes))
        if not self.stages or not isinstance(self.stages[-1], MLSLayerSpec):
            raise ValueError("an MLS plan for hardware must end with an MLS layer (matvec / conv)")
        if cur != doc["output"]:
            raise ValueError(f"the MLS plan's output '{doc['output']}' is not its last layer's output '{cur}'")
        self.out_bits = self.stages[-1].out_bits
        self.out_elems = self.stages[-1].out_elems
        self.out_scale = float(doc["tensors"][doc["output"]]["scale"])

    @property
    def cycles_per_frame(self) -> int:
        """The slowest stage's cycles per frame (stages overlap on consecutive frames)."""
        return max(s.cycles_per_frame for s in self.stages)

    def packing(self) -> dict:
        return {"input": {"elements_per_beat": 1, "element_bits": self.in_bits, "signed": self.in_signed,
                          "beat_bytes": _beat_bytes(self.in_bits), "frame_elements": self.in_elems},
                "output": {"elements_per_beat": 1, "element_bits": self.out_bits, "signed": True,
                           "beat_bytes": _beat_bytes(self.out_bits), "frame_elements": self.out_elems,
                           "scale": self.out_scale}}

    def create(self) -> "MLSTop":
        return MLSTop(self)


class MLSTop(wiring.Component):
    """See :class:`MLSTopSpec`."""

    def __init__(self, spec: MLSTopSpec):
        self.spec = spec
        ib, ob = 8 * _beat_bytes(spec.in_bits), 8 * _beat_bytes(spec.out_bits)
        super().__init__({"s_axis_tdata": In(ib), "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
                          "s_axis_tlast": In(1),
                          "m_axis_tdata": Out(ob), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
                          "m_axis_tlast": Out(1)})

    def elaborate(self, platform):
        from amaranth.hdl import signed

        m = Module()
        s = self.spec
        units = []
        for k, st in enumerate(s.stages):
            u = st.create()
            m.submodules[f"s{k}_{st.name}"] = u
            units.append(u)
        raw = self.s_axis_tdata[:s.in_bits]
        x = Signal(signed(s.in_bits + 1))
        m.d.comb += x.eq(raw.as_signed() if s.in_signed else raw)
        first = units[0].i
        m.d.comb += [first.payload.eq(x), first.valid.eq(self.s_axis_tvalid), self.s_axis_tready.eq(first.ready)]
        for a, b in zip(units[:-1], units[1:]):
            m.d.comb += [b.i.payload.eq(a.o.payload), b.i.valid.eq(a.o.valid), a.o.ready.eq(b.i.ready)]
        last = units[-1].o
        count = Signal(range(s.out_elems))
        m.d.comb += [self.m_axis_tdata.eq(last.payload.as_signed()), self.m_axis_tvalid.eq(last.valid),
                     last.ready.eq(self.m_axis_tready), self.m_axis_tlast.eq(count == s.out_elems - 1)]
        with m.If(last.valid & self.m_axis_tready):
            m.d.sync += count.eq(Mux(count == s.out_elems - 1, 0, count + 1))
        return m
