import sys

from scibench_data.cli import main

sys.exit(main())
