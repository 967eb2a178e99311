from backup.cli import main

main()
