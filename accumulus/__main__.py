import sys

from accumulus.cli import main

sys.exit(main())
