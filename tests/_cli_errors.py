"""The one helper of the CLI tests that read a user error."""


def error_line(capsys) -> str:
  """The single ``error:`` line a CLI mistake printed: no traceback on either stream, not an unexpected error."""
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err and "Traceback" not in captured.out
  errors = [line for line in captured.err.splitlines() if "error:" in line]
  assert len(errors) == 1, f"expected one error line, got:\n{captured.err}"
  assert "unexpected error" not in errors[0]
  return errors[0]
