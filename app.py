"""SegLab dashboard entry point: ``python app.py [--host H] [--port P] [--public] [--auth USER:PASS]``.

Also the ``app_file`` of the Hugging Face Space (which runs it as is, with no flags; public mode
turns itself on there). Everything happens in ``seg.ui.app.main``.
"""

import gc
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
gc.disable()  # while gradio, torch and the tabs load: main() freezes what they made and turns it back on

from seg.ui.app import main  # noqa: E402  (after the env is set)

if __name__ == "__main__":
    main()
