from bench.maintenance.run import main

main()
