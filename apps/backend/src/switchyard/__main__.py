from switchyard.roles.cli import main

main()
