from nova_pipeline.cli import main

main()
