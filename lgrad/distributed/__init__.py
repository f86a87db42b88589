"""The worker-axis runtime: counted collectives and a runner for n workers."""
from lgrad.distributed import comm as comm
from lgrad.distributed.workers import BACKENDS as BACKENDS
from lgrad.distributed.workers import make_program as make_program
from lgrad.distributed.workers import run_workers as run_workers
from lgrad.distributed.workers import worker_mesh as worker_mesh
from lgrad.distributed.workers import place as place
from lgrad.distributed import multiprocess as multiprocess
from lgrad.distributed import partition as partition
from lgrad.distributed import topology as topology

__all__ = [
    "BACKENDS",
    "comm",
    "make_program",
    "multiprocess",
    "partition",
    "place",
    "run_workers",
    "topology",
    "worker_mesh",
]
