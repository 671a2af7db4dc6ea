"""The Hugging Face Spaces entry point: `python app.py [--port N] [--checkpoint PATH] ...`.

The app itself is `adavit.app.ui`; `adavit app` starts the same thing.
"""
import sys

from adavit.app.ui import main

if __name__ == "__main__":
    sys.exit(main())
