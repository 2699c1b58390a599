from ruststash.cli import main

main()
