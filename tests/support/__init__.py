"""What the tests share: live nodes and services, socket clients, waiting, names."""
