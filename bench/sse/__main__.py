from bench.sse.run import main

main()
