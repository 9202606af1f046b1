"""The training engine: what any flow, benchmark or plugin test trains with. Tasks in `tasks/`
wrap it for Prefect; nothing here knows about Prefect or MLflow.

    loop.py          train_model and TrainingRun: setup, resume, the loop, save; TrainResult
    losses.py        the step's token-mean loss; per-record response losses for evaluation
    best_step.py     periodic evaluation, keeping the best step's weights (train.eval_every)
    checkpoint.py    crash-safe checkpoints, resumed only when they match the run's inputs
    padding_free.py  padding-free batches: examples end to end, attention kept within each
    chunked_head.py  the output head and loss a chunk of positions at a time
    parallel.py      DDP or FSDP over the processes of a torch.distributed run
    launch.py        training in processes of its own (torchrun, or one beside others)
    worker.py        one such process: `python -m tuneforge.training.worker SPEC.json`
    multinode.py     multi-node launch: node 0's torchrun command, the joining nodes' entry
"""
