"""`cnnlab doctor`: the course's learning-process checks (data, initial loss, init health, gradients and
updates, overfit a tiny subset, learning-rate range test, a short training probe), each with a verdict and a fix.

    report = cnnlab.doctor("mnist", model="seed_cnn")   # a DoctorReport; report.failed, report.to_json()

`cnnlab.doctor` is this package and is also callable as the function (`cnnlab.doctor(...)` works whether or not
the package was imported before), so the public name stays one.
"""

import sys
import types

from cnnlab.doctor.checks import Check, DoctorReport
from cnnlab.doctor.run import doctor


class CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule

__all__ = ["Check", "DoctorReport", "doctor"]
