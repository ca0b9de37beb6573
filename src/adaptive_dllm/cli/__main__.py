import sys

from adaptive_dllm.cli import main

sys.exit(main())
