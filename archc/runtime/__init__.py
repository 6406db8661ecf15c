"""What generated code runs on: imports torch, never the compiler."""
