"""Local servers speaking outside services' real wire formats; tests run the real client libraries on them."""
