"""The trainer's parts that are not the loop: optimizer construction (`optimizer`),
checkpoint I/O (`checkpoints`), the precision casts (`precision`) and preemption
(`preemption`). `jaxface.train` re-exports their public names."""
