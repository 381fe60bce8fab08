"""The Coral book's examples, as written (imports aside), with what the text around them claims."""
