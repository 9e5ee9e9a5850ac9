"""Tooling that builds models, apart from what serves them: the demo models (shipped built in ``aipc_chat/demo``;
this is their recipe) and the benchmark models. It needs the ``[convert]`` extra (torch, transformers, diffusers,
optimum-intel, nncf); nothing on the serving path imports it."""
