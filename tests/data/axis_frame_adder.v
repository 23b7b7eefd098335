// Test scaffolding for sim/: a tiny AXI-Stream frame engine with known behaviour.
// Receives BEATS beats (EPB unsigned IN_W-bit elements each, tlast on the last), waits
// BUSY cycles, then sends BEATS beats of y = 2*x - 3 as signed OUT_W-bit elements.
// Cycles per frame are exactly 2*BEATS + BUSY, so the testbench's measurement can be
// checked against a number that does not come from the testbench.
// BUG=1 corrupts y when x is all ones; BUG=2 sends a frame twice when its first element
// is all ones: the scoreboard must catch both.
`default_nettype none
module axis_frame_adder #(
    parameter EPB = 4,
    parameter IN_W = 5,
    parameter OUT_W = 8,
    parameter BEATS = 4,
    parameter BUSY = 20,
    parameter BUG = 0
) (
    input wire clk,
    input wire rst,
    input wire [((EPB*IN_W+7)/8)*8-1:0] s_axis_tdata,
    input wire s_axis_tvalid,
    output wire s_axis_tready,
    input wire s_axis_tlast,
    output wire [((EPB*OUT_W+7)/8)*8-1:0] m_axis_tdata,
    output wire m_axis_tvalid,
    input wire m_axis_tready,
    output wire m_axis_tlast
);
    localparam IN_DW = ((EPB*IN_W+7)/8)*8;
    localparam OUT_DW = ((EPB*OUT_W+7)/8)*8;
    localparam RECV = 2'd0, WAIT = 2'd1, SEND = 2'd2;

    reg [1:0] state;
    reg [IN_DW-1:0] frame [0:BEATS-1];
    reg [15:0] idx;
    reg [15:0] cnt;
    reg repeat_done;

    assign s_axis_tready = (state == RECV);
    assign m_axis_tvalid = (state == SEND);
    assign m_axis_tlast = (state == SEND) && (idx == BEATS - 1);

    wire [IN_DW-1:0] cur = frame[idx];
    genvar e;
    generate
        for (e = 0; e < EPB; e = e + 1) begin : lane
            wire [IN_W-1:0] x = cur[e*IN_W +: IN_W];
            wire [OUT_W-1:0] y = {{(OUT_W-IN_W){1'b0}}, x} * 2 - 3;
            assign m_axis_tdata[e*OUT_W +: OUT_W] = (BUG == 1 && x == {IN_W{1'b1}}) ? (y ^ 1) : y;
        end
        if (OUT_DW > EPB*OUT_W) begin : pad
            assign m_axis_tdata[OUT_DW-1:EPB*OUT_W] = 0;
        end
    endgenerate

    wire dup = (BUG == 2) && !repeat_done && (frame[0][IN_W-1:0] == {IN_W{1'b1}});

    always @(posedge clk) begin
        if (rst) begin
            state <= RECV;
            idx <= 0;
            cnt <= 0;
            repeat_done <= 0;
        end else begin
            case (state)
                RECV: if (s_axis_tvalid) begin
                    frame[idx] <= s_axis_tdata;
                    if (s_axis_tlast) begin
                        state <= WAIT;
                        idx <= 0;
                        cnt <= 0;
                        repeat_done <= 0;
                    end else begin
                        idx <= idx + 1;
                    end
                end
                WAIT: begin
                    cnt <= cnt + 1;
                    if (cnt == BUSY - 1) state <= SEND;
                end
                SEND: if (m_axis_tready) begin
                    if (idx == BEATS - 1) begin
                        idx <= 0;
                        if (dup) begin
                            repeat_done <= 1;
                        end else begin
                            state <= RECV;
                        end
                    end else begin
                        idx <= idx + 1;
                    end
                end
                default: state <= RECV;
            endcase
        end
    end
endmodule
