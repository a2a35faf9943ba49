"""The long-running agent of ``reconciler run``: loop, triggers, watchers, drift, history.

Top layer (beside ``reconciler.api``, which it never imports): the CLI builds an ``Agent``, hands
it to the API as its view, and runs its loop in the main thread. See ``loop`` for the behaviour.
"""
