"""CRM adapters: the protocol (base), the in-memory fake and the Dataverse Web API adapter."""
