from plantdx.cli import main

main()
