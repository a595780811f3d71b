"""`bench human-eval SUITE_DIR`: draw the images if needed, then serve the rating page, or cast simulated votes
through the same server and print the resulting analysis."""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import BenchError
from bench.human_eval.draw import DrawConfig, draw


def human_eval(suite_dir: Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
               simulate_votes: int = 0, noise: float = 0.0, draw_cfg: DrawConfig = DrawConfig()) -> dict | None:
    """Serve until Ctrl-C (simulate_votes = 0), or cast that many simulated votes and return the analysis."""
    from bench.human_eval.app import BackgroundServer, check_host, create_app, serve

    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise BenchError(f"suite folder not found: {suite_dir}")
    if simulate_votes < 0:
        raise BenchError(f"--simulate must be >= 0 votes, got {simulate_votes}")
    if noise < 0:
        raise BenchError(f"--noise must be >= 0, got {noise}")
    if token is not None and not token.strip():
        raise BenchError("--token must not be empty")
    check_host(host, token)
    if not 0 < port < 65536:
        raise BenchError(f"--port must be in 1 … 65535, got {port}")
    index = draw(suite_dir, draw_cfg)
    if not simulate_votes:
        serve(suite_dir, host, port, token)
        return None

    from bench.human_eval.analysis import analyse, section_markdown
    from bench.human_eval.simulate import SimConfig, simulate

    server = BackgroundServer(create_app(suite_dir, token))
    try:
        done = simulate(server.url, index["model"]["name"], SimConfig(votes=simulate_votes, noise=noise), token,
                        device="cpu")
    finally:
        server.stop()
    print(f"{done['votes']} simulated votes ({done['metric']} + N(0, {noise:g}²) noise, {done['raters']} raters, "
          f"{done['ties']} ties) through {server.url}")
    result = analyse(suite_dir)
    print("\n".join(section_markdown(result)))
    return result
