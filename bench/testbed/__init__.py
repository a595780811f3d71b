"""The built-in offline testbed (docs/testbed.md): coloured handwritten digits, a
consistency-distilled pixel-space LCM of the real diffusers classes, and rewards that play the real ones' roles.

Modules: `world_prompts` (grammar and splits, torch-free), `world` (images), `generator` and `distill`
(teacher pre-training and LCM distillation), `nets`, `gold`, `evaluators`, `preference` (evaluator networks),
`quality` (the generator's accuracy/FID table), `model` (the registered "testbed" model), `build` (rebuild
every shipped weight in `weights/`).
"""
