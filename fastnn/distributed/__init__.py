"""Data parallelism over MPI: ``mpiexec -n N python train.py`` runs N synchronous replicas.

    comm = fnn.distributed.init()                      # MPI.COMM_WORLD unless given another
    opt = fnn.distributed.DataParallel(model, fnn.optim.Adam(model, lr=1e-3))
    for xb, yb in fnn.data.batches(x, y, batch_size=64, seed=0, shard=comm):
        ...; model.backward(dlogits); opt.step()        # gradients averaged across ranks

The same script runs unchanged in one process without ``mpiexec`` (size 1, no MPI calls).
"""
from .data_parallel import DataParallel
from .runtime import (allreduce_mean, barrier, comm, init, is_initialized, launched_rank, launched_under_mpi,
                      rank, size)

__all__ = ["DataParallel", "allreduce_mean", "barrier", "comm", "init", "is_initialized", "launched_rank",
           "launched_under_mpi", "rank", "size"]
