"""The embedded home's shared parts: processes and virtualenvs (runner and serving), the controller lock.

Below the backend kinds: :mod:`controller.backends.pipelines.local` and
:mod:`controller.backends.serving.local` import it, it imports neither (nor
any other kind), so the two stay independent of each other.

* :mod:`.processes`: the scrubbed environment of a child process, whether a
  command needs a shell, starting detached processes and stopping them;
* :mod:`.venvs`: one virtualenv per :class:`~controller.backends.python_env.PythonEnvironment`,
  built once and reused: a model's steps run in its environment's, its
  server in that environment with the server's packages added;
* :mod:`.lock`: one controller per state directory (``flywheel run`` and
  ``flywheel serve`` hold it for the controller's lifetime).
"""
