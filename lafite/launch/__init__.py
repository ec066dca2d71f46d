"""Where a run executes: in this process (local), as torchrun DDP processes on this node, or as
SLURM jobs through submitit. The runner plans, records and hands each run to a launcher; every
launcher ends in :func:`lafite.launch.execute.execute` or ``train_and_record``, so a run is
trained and recorded the same way wherever it ran.
"""
