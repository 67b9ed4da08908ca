"""`python -m poc59.data.synthetic`: see `poc59.data.synthetic.writer.main`."""

import sys

from poc59.data.synthetic.writer import main

sys.exit(main())
