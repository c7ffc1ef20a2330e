import sys

from edgedl.cli import main

sys.exit(main(prog_name="edgedl"))
