from bench.logs.run import main

main()
