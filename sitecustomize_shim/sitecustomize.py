"""detrix-auto's ``sitecustomize`` for ``PYTHONPATH`` injection.

Used by ``detrix-auto run`` (and by hand) for interpreters whose
site-packages lack ``detrix_auto.pth``. It first chain-loads the next
``sitecustomize`` further down ``sys.path`` (Debian ships one), so adding this
directory never shadows it, then runs the same gate as the ``.pth`` hook.
If ``detrix_auto`` is not importable by this interpreter, the directories
listed in ``DETRIX_AUTO_PATH`` (``os.pathsep``-separated) are appended to
``sys.path`` (at the end: the application's own packages keep precedence).
"""


def _detrix_auto_chain_and_start() -> None:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.get(__name__)

    def _is_here(entry: str) -> bool:
        try:
            return os.path.abspath(entry or os.getcwd()) == here
        except OSError:
            return False

    saved_path = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if not _is_here(p)]
        del sys.modules[__name__]
        try:
            import sitecustomize  # noqa: F401 - the next one down, if any
        except ImportError as exc:
            if exc.name != "sitecustomize":
                sys.stderr.write(f"detrix-auto: the next sitecustomize failed: {exc}\n")
        except Exception as exc:  # noqa: BLE001 - as site.py itself would report it
            sys.stderr.write(f"detrix-auto: the next sitecustomize failed: {exc!r}\n")
    finally:
        added = [p for p in sys.path if p not in saved_path]
        sys.path[:] = saved_path + added
        if ours is not None:
            sys.modules[__name__] = ours

    flag = os.environ.get("DETRIX_ENABLE", "").strip().lower()
    if flag in ("", "0", "false", "no", "off"):
        return
    try:
        try:
            import detrix_auto._boot as boot
        except ImportError:
            extra = [p for p in os.environ.get("DETRIX_AUTO_PATH", "").split(os.pathsep) if p]
            if not extra:
                raise
            sys.path.extend(p for p in extra if p not in sys.path)
            import detrix_auto._boot as boot
        boot.start_from_site()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - never break the host
        try:
            sys.stderr.write(
                f"detrix-auto: start-up hook failed ({type(exc).__name__}: {exc}); "
                "the application runs without it\n"
            )
        except BaseException:  # noqa: BLE001, S110
            pass


_detrix_auto_chain_and_start()
