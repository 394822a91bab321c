"""facescan_people: who is in the faces facescan found.

Matching faces to known people through the pgvector HNSW indexes (sync, enrol, matching,
directory, over the tables of schema 5) and clustering unknown faces (cluster). Imported
by the `facescan` CLI (people_cli, scan's sync); it imports neither the operator nor the
detector.
"""
