"""SegLab dashboard entry point: ``python app.py [--host H] [--port P] [--share]``.

Also the ``app_file`` of the Hugging Face Space (which runs it as is, with no flags).
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

from seg.ui.app import build_app, configure_torch_threads, launch_kwargs  # noqa: E402  (after the env is set)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SegLab dashboard (Gradio)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: ./checkpoints)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("seg.ui").info("torch intra-op threads: %d", configure_torch_threads())
    demo = build_app(args.checkpoints)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                max_file_size="50mb", show_error=True, **launch_kwargs())


if __name__ == "__main__":
    main()
