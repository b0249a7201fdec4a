"""What the embedded home's pipeline runner and serving share: processes and virtualenvs.

Below the backend kinds: :mod:`controller.backends.pipelines.local` and
:mod:`controller.backends.serving.local` import it, it imports neither (nor
any other kind), so the two stay independent of each other.

* :mod:`.processes`: the scrubbed environment of a child process, whether a
  command needs a shell, starting detached processes and stopping them;
* :mod:`.venvs`: one virtualenv per :class:`~controller.backends.python_env.PythonEnvironment`,
  built once and reused: a model's steps run in its environment's, its
  server in that environment with the server's packages added.
"""
