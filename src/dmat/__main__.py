from dmat.cli.main import main

main()
