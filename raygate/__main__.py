from raygate.cli import main

main()
