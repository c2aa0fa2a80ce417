from dnnpiracy.cli import main

main()
