"""The contracts every method, reward and model is written against, and the pure math under them: the policy
(bench/core/policy.py), the one sampler, the method and reward base classes, the compute meter and budgets, the
divergences, data parallelism, checks and the one error type. Imports torch and nothing else of the package;
`bench.api` re-exports what a plugin author needs.
"""
