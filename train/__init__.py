"""cifar-insight training package. Importing it registers ``resnet18_cifar`` in timm."""

import os
import signal
import sys

if sys.argv[:1] == ["-m"]:  # `python -m train.X` (Python's argv[0] is "-m" while it imports the package): the
    # imports below take seconds, and a stop meanwhile ends quietly, as in train/run.py's own start-up
    def _stopped_while_starting(signum: int, frame: object) -> None:
        training = "train.run" in sys.orig_argv  # a stopped run exits 0 on SIGTERM (train/stops.py); a check never
        kept = "nothing was saved" if training else "nothing was changed (the check only reads)"
        print(f"stopped: {signal.Signals(signum).name} during start-up; {kept}", file=sys.stderr)
        sys.stderr.flush()  # then exit at once: a library import may swallow SystemExit (seen under load)
        os._exit(0 if training and signum != signal.SIGINT else 128 + signum)

    for _sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_sig) is not signal.SIG_IGN:  # nohup, `cmd &`: an ignored signal stays ignored
            signal.signal(_sig, _stopped_while_starting)

from train import model as _model  # noqa: F401  (registers the timm model)
