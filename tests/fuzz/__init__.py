"""A fuzzing harness for the node (issue 11, docs/security.md `## Fuzzing`).

- `dataset_mutators`: C-STORE data set bytes -> mutated bytes (bit flips, truncation, element lengths,
  VR bytes, sequences of undefined length, the wrong transfer syntax for the context).
- `pdu_mutators`: whole associations as raw bytes (PDU types and lengths, items, presentation contexts,
  PDVs, command sets).
- `stow_mutators`: STOW-RS request bodies and headers (boundaries, part headers, Content-Type, truncation).
- `driver`: sends one case to a running node (tests/rawpeer.py, a raw HTTP socket) and says what it did.
- `checks`: is an acknowledged instance readable (pydicom, dcmtk); does a good peer still get in.
- `campaign`: starts one node, runs N seeded cases in batches, counts and prints the outcome.
"""
