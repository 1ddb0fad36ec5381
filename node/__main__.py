"""`python -m node` is the same as the `dicom-node` command."""

import sys

from node.cli import main

sys.exit(main())
