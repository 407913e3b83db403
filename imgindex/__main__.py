from imgindex.cli import main

main()
