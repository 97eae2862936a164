"""The trainer's parts that are not the loop: the train state, the mesh and the state's
placement (`state`), the train step (`step`), optimizer construction (`optimizer`),
checkpoint I/O (`checkpoints`), the precision casts (`precision`), preemption
(`preemption`), and running evaluators and writing their artefacts (`eval_writer`)."""
