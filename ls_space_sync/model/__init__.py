"""Pure data logic, no I/O: task JSON <-> Arrow rows, stamps and change sets, task content and
its diff, and which stored version a user means (refs)."""
