"""capsim: a discrete-event simulator and capacity planner for LLM serving.

This small package holds what every other package shares and nothing else: the
error type that turns bad input into a one-paragraph message, and the string-keyed
registry through which schedulers, routers, techniques, devices and trace formats
plug in.
"""

__version__ = "0.1.0"
