from edgedl.cli import main

main(prog_name="edgedl")
