"""Multi-pool deployments: pools of replicas, serving systems that route requests between them, KV hand-offs.

See docs/pools.md. A scenario with ``pools:`` is simulated by :func:`simulator.pools.engine.simulate_pools`
(``simulator.engine.simulate`` dispatches to it); a scenario without is untouched.
"""
