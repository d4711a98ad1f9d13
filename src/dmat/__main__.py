from dmat.cli import main

main()
