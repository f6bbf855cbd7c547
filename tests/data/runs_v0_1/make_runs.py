"""Made with cnnlab at commit ecbe3df (before the wave-2 architecture change): PYTHONPATH=<that checkout>."""

import torch

import cnnlab
from cnnlab.train import autosave

torch.set_num_threads(1)
OPTS = dict(model="seed_cnn", model_kwargs={"width": 4, "hidden": 16}, epochs=3, batch_size=64, precision="fp32",
            seed=3, quiet=True, tensorboard=False)


class Crash(BaseException):
    pass


cnnlab.fit("digits", out="finished", **OPTS)
original = autosave.RunCheckpointer.save_epoch


def crash_in_second_epoch(self, epoch):
    if epoch == 1:
        raise Crash
    original(self, epoch)


autosave.RunCheckpointer.save_epoch = crash_in_second_epoch
try:
    cnnlab.fit("digits", out="interrupted", **OPTS)
except Crash:
    print("crashed as planned")
