package rabbitmq

import "github.com/sluice-cdi/sluice/router/template"

// RoutingKeyBytesMax is AMQP's limit on a routing key (a short string).
const RoutingKeyBytesMax = 255

// Template is a parsed routing key template (router/template): literal
// text with the placeholders {source}, {type}, {event} and {key} (the
// ordering key: userId or anonymousId, for consistent-hash exchanges).
type Template = template.Template

// ParseTemplate parses a routing key template.
func ParseTemplate(s string) (Template, error) {
	return template.Parse(s, template.Source, template.Type, template.Event, template.Key)
}
