//! An agent's steady stream of requests through the bus while its primary model server is
//! killed, hung and restored.
